"""Smoke-executes every notebook of _toc.yml through papermill and builds the book
(tools/build_book.py --mode smoke), then checks what the reader would get."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import Page

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402

from vitreg_lib import data, explorer, features, outliers  # noqa: E402
from vitreg_lib.config import settings  # noqa: E402
from vitreg_lib.models import load_model  # noqa: E402
from vitreg_lib.paper import PAPER  # noqa: E402

#: a pretrained-tier result from an earlier build, planted before the smoke (mini) build:
#: the mini build must leave it alone, and the scorecard must show both tiers
PLANTED = {"outlier_pct_dinov2_g": dict(value=2.5, paper=2.37, model="dinov2_g", note="norm > 150",
                                        comparable="yes: the paper's model and rule")}


def plant_pretrained(out: Path) -> None:
    folder = build_book.results_dir(out, "pretrained")
    folder.mkdir(parents=True)
    (folder / "01_high_norm_tokens.json").write_text(json.dumps(PLANTED))
    (folder / "_status.json").write_text(json.dumps([dict(notebook="notebooks/01_high_norm_tokens.ipynb",
                                                          status="ok", mode="full", tier="pretrained")]))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    plant_pretrained(out)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py"), "--mode", "smoke",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


def test_every_toc_notebook_ran_and_recorded(built):
    status = json.loads((built / "results" / "offline" / "_status.json").read_text())
    assert [s["notebook"] for s in status] == build_book.notebooks()
    assert all(s["status"] == "ok" and s["mode"] == "smoke" for s in status)
    for nb, run in zip(build_book.notebooks(), status):
        recorded = json.loads((built / "results" / "offline" / f"{Path(nb).stem}.json").read_text())
        assert run["tier"] == "offline" and run["models"] == list(dict.fromkeys(
            e["model"] for e in recorded.values() if e["model"])), nb
        assert "mini_reg0" in run["models"], nb
    pretrained = built / "results" / "pretrained"  # another tier's numbers survive a mini build
    assert json.loads((pretrained / "01_high_norm_tokens.json").read_text()) == PLANTED
    assert sorted(p.name for p in pretrained.iterdir()) == ["01_high_norm_tokens.json", "_status.json"]


def test_chapter1_numbers_are_what_the_library_measures(built):
    rec = json.loads((built / "results" / "offline" / "01_high_norm_tokens.json").read_text())
    s = settings("offline", smoke=True)
    imgs = data.analysis_images(s.n_photos, s.n_scenes, seed=0, scene=s.scene)  # the minis' own scenes
    for name in s.models:
        entry = rec[f"outlier_pct_{name}"]
        assert entry["paper"] == PAPER["F1"]["outlier_pct"] and entry["model"] == name
        f = features.extract(load_model(name), list(imgs.images.values()), layers=[-1])
        expect = outliers.summarize(f, -1, outliers.HistogramGap())["outlier_pct"]
        assert entry["value"] == pytest.approx(expect, abs=1e-6)
        assert 0 <= entry["value"] <= 100
        assert "histogram gap" in entry["note"] and "scenes" in entry["note"]
    # a number that is not 0 whatever the images (no mini has outliers): it tells the images apart
    f = features.extract(load_model("mini_reg4"), list(imgs.images.values()), layers=[-1])
    summary = outliers.summarize(f, -1, outliers.HistogramGap())
    assert rec["register_over_patch_norm_mini_reg4"]["value"] == pytest.approx(
        summary["register_norm_mean"] / summary["median_normal"], rel=1e-6)


def test_book_pages_show_figures_and_links(built):
    html = built / "_build" / "html"
    assert (html / "index.html").is_file()
    ch1 = (html / "notebooks" / "01_high_norm_tokens.html").read_text()
    assert len(re.findall(r"<img [^>]*src=\"[^\"]+\.png\"", ch1)) >= 5
    assert "Paper vs here" in ch1 and "google.colab" not in ch1  # setup cell hidden
    assert "html-manager" not in ch1  # no widget scripts from a CDN: the page works offline
    intro = (html / "book" / "intro.html").read_text()
    assert "come from the <strong>offline</strong> tier" in intro  # where its figures come from
    assert build_book.colab_url("notebooks/01_high_norm_tokens.ipynb") in intro
    status = (html / "book" / "status.html").read_text()
    assert "01_high_norm_tokens" in status
    assert ("This build: <strong>offline</strong> tier, <strong>smoke</strong> mode, "
            "<strong>full</strong> profile.") in status
    assert re.search(r"01_high_norm_tokens</p></td>\n(<td><p>[^<]*</p></td>\n){4}"
                     r"<td><p>mini_reg0, mini_reg4, dinov2_s_imgfocus</p></td>", status)  # the real ViT-S too
    # the offline DINOv2-S is compared with the hub's only where the hub's weights are: not here
    assert "DINOv2-S against the hub" in status
    assert "Not yet compared: a pretrained-tier build" in status
    # every page knows the book's address, derived from repository.url
    assert f'<link rel="canonical" href="{build_book.book_url()}book/intro.html" />' in intro


def test_scorecard_page_shows_both_tiers_with_verdicts(built, request):
    """The summary first: one row per finding (F1-F11, T1), each tier's verdict as the
    library computes it from the recorded numbers (counted FLOPs an arithmetic check, never a
    reproduction), a chapter link per row, and in a 1280-px window no wider than the text
    column; then the tiers, the rules, and a table per finding with a row per number."""
    import scorecard

    from vitreg_lib.paper import ARITHMETIC, REPRODUCED

    path = built / "_build" / "html" / "book" / "scorecard.html"
    html = path.read_text()
    toc = html[html.index('<nav class="bd-links'):]
    assert toc.index('href="#">Scorecard') < toc.index('href="status.html">Build status')
    assert html.index("<h2>Summary") < html.index("<h2>Tiers on this page") < html.index(
        "<h2>How a verdict is decided") < html.index("<h2>F1: ")
    table = html[html.index("<h2>Summary"):].split("</table>")[0]
    text = [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)]
    assert text[0] == ["finding", "offline", "pretrained", "chapter"]
    scored = [f"F{i}" for i in range(1, 12)] + ["T1"]
    assert [row[0].split()[0] for row in text[1:]] == scored
    results = built / "results"
    expected = re.findall(r"^\| \*\*\w+\*\* .*$", scorecard.summary(results), re.M)  # the library's
    assert [[re.sub(r"\{doc\}`([^<`]*?) ?<[^`]*>`", r"\1", c).replace("*", "").replace("\\", "")
             for c in re.split(r" \| ", line.strip("| "))] for line in expected] == text[1:]
    summary = dict(zip(scored, text[1:]))
    assert summary["F1"][2] == "reproduced (1 of 1)"  # the planted pretrained number, 2.5 against 2.37
    assert summary["F2"][2] == "chapter not run"  # the planted pretrained build ran chapter 1 only
    assert summary["F8"][1].startswith(ARITHMETIC + " (")  # counted FLOPs: never "reproduced"
    assert summary["F7"][3] == "planned" and summary["F11"][3] == "5, 6"
    links = re.findall(r'<a class="reference internal" href="([^"]+)"', table)  # F7: none, F11: two
    assert links[0] == "../notebooks/01_high_norm_tokens.html" and len(links) == len(scored)
    rows = scorecard.rows(results)
    flops = [r for r in rows if r.name.startswith("extra_flops_pct")]
    assert flops and all(r.verdict == ARITHMETIC for r in flops)
    offline = sum(r.verdict == REPRODUCED for r in rows if r.tier == "offline")  # the FLOPs not among them
    assert f"<strong>offline</strong> (smoke mode, 7 chapters): {offline} reproduced" in html
    assert "<strong>pretrained</strong> (full mode, 1 chapter): 1 reproduced" in html
    assert "within 10 % (relative)" in html  # the rules are on the page
    assert re.search(r"<td><p>pretrained</p></td>\n<td><p>dinov2_g</p></td>\n<td><p>2.37</p></td>\n"
                     r"<td><p>2.5</p></td>\n<td><p><strong>reproduced</strong>", html)
    assert re.search(r"<td><p>offline</p></td>\n<td><p>mini_reg0</p></td>\n<td><p>2.37</p></td>\n"
                     r"<td><p>[^<]*</p></td>\n<td><p><strong>not comparable</strong>", html)  # "no: ..."
    assert html.count('href="../notebooks/01_high_norm_tokens.html"><span class="doc">chapter 1') >= 3
    for finding in ("F1", "F4", "F5", "F8"):
        assert f"<h2>{finding}: " in html, finding
    try:  # the summary fits the text column at 1280 px (with the browser tests; skipped without)
        browser = request.getfixturevalue("browser")
    except pytest.skip.Exception:
        return
    page = Page(browser, path.as_uri(), width=1280)
    fit = page.page.evaluate("""() => { const t = document.querySelector('#summary table');
        const box = t.parentElement, article = t.closest('article');
        return {table: t.getBoundingClientRect().right, article: article.getBoundingClientRect().right,
                scroll: box.scrollWidth, client: box.clientWidth,
                overflowing: Array.from(t.querySelectorAll('td, th'))
                  .filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.textContent)}; }""")
    assert fit["table"] <= fit["article"] + 1 and fit["scroll"] <= fit["client"] + 1, fit
    assert not fit["overflowing"] and not page.blocked, (fit, page.blocked)
    page.page.close()


def check_one_setting(root: Path) -> None:
    url = yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"]
    for nb in build_book.notebooks(root):
        text = (root / nb).read_text()
        assert f"git+{url}" in text, f"{nb}: Colab install cell must use {url}"
    readme = (root / "README.md").read_text()
    for nb in build_book.notebooks(root):
        assert build_book.colab_url(nb, root) in readme, f"README lacks the Colab link of {nb}"
    book = build_book.book_url(root=root)
    assert book == build_book.book_url(url) and book in readme, f"README must give the book's address, {book}"


def test_a_build_keeps_its_results_in_its_tier_folder(tmp_path, monkeypatch):
    """build_book.main with papermill and jupyter-book stubbed (the real ones run in the
    smoke build): where the numbers go, what the status page and scorecard are made of."""
    import papermill

    def fake_execute(src, dst, parameters, **kwargs):  # an executed copy and a recorded number
        shutil.copy(src, dst)
        results = Path(os.environ["VITREG_RESULTS_DIR"])
        assert results == build_book.results_dir(tmp_path, parameters["tier"])
        (results / f"{Path(src).stem}.json").write_text(json.dumps({
            "x_m1": dict(value=1.0, paper=1.05, model="m1", note="", comparable=""),
            "y_m2": dict(value=None, paper=None, model="m2", note="", comparable=""),
            "z": dict(value=3, paper=None, model=None, note="", comparable="")}))

    jb, real_run = [], subprocess.run
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setattr(build_book.subprocess, "run",  # jupyter-book stubbed; git (the commit) runs
                        lambda cmd, **k: real_run(cmd, **k) if k else
                        (jb.append(cmd) or subprocess.CompletedProcess(cmd, 0)))
    monkeypatch.setenv("VITREG_RESULTS_DIR", "")  # restored after the test; main sets it
    monkeypatch.setenv("MPLBACKEND", "agg")
    plant_pretrained(tmp_path)
    stale = build_book.results_dir(tmp_path, "offline") / "99_removed_chapter.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    monkeypatch.setattr(sys, "argv", ["build_book.py", "--mode", "smoke", "--out", str(tmp_path)])
    assert build_book.main() == 0

    mini = build_book.results_dir(tmp_path, "offline")
    assert not stale.exists()  # a tier's folder holds one build's numbers only
    assert sorted(p.stem for p in mini.glob("[!_]*.json")) == [Path(nb).stem for nb in build_book.notebooks()]
    runs = json.loads((mini / "_status.json").read_text())
    assert all(r["tier"] == "offline" and r["models"] == ["m1", "m2"] for r in runs)
    planted = build_book.results_dir(tmp_path, "pretrained") / "01_high_norm_tokens.json"
    assert json.loads(planted.read_text()) == PLANTED
    stage = tmp_path / "stage"
    status = (stage / "book" / "status.md").read_text()
    assert "This build: **offline** tier, **smoke** mode, **full** profile." in status
    assert "| 01_high_norm_tokens | ok | " in status and "| m1, m2 |" in status
    card = (stage / "book" / "scorecard.md").read_text()
    assert "<!-- scorecard -->" not in card and "**pretrained** (full mode, 1 chapter)" in card
    assert card.count("| offline | m1 | 1.05 | 1 | **reproduced** (within 10 % of 1.05) |") == len(runs)
    config = yaml.safe_load((stage / "_config.yml").read_text())
    assert config["html"]["baseurl"] == build_book.book_url()
    assert config["repository"] == build_book.repo_settings()  # the rest of the config is kept
    assert "baseurl" not in (ROOT / "_config.yml").read_text()  # derived, never typed
    assert jb and jb[0][1:3] == ["build", str(stage)] and "-W" in jb[0]


def test_a_failed_chapter_fails_the_build_after_every_chapter_ran(tmp_path, monkeypatch):
    """Loud failure: every chapter still runs (so every error is listed), the build exits 1
    (a workflow deploys nothing and falls back to nothing), the tier gets no _status.json
    (the scorecard leaves it out), and the HTML built for reading says FAILED with the error
    on its first page and its status page."""
    import papermill

    ran = []

    def fake_execute(src, dst, parameters, **kwargs):
        ran.append(Path(src).name)
        shutil.copy(src, dst)
        if "03_" in src:
            raise papermill.PapermillExecutionError(4, 4, "", "ModelUnavailableError", "no hub", [])

    jb, real_run = [], subprocess.run
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setattr(build_book.subprocess, "run",  # jupyter-book stubbed; git (the commit) runs
                        lambda cmd, **k: real_run(cmd, **k) if k else
                        (jb.append(cmd) or subprocess.CompletedProcess(cmd, 0)))
    monkeypatch.setenv("VITREG_RESULTS_DIR", "")
    monkeypatch.setenv("VITREG_FEATURE_CACHE", "")
    monkeypatch.setattr(build_book, "compare_imgfocus", lambda out: "not compared (stubbed)")
    monkeypatch.setattr(sys, "argv", ["build_book.py", "--tier", "pretrained", "--profile", "publish",
                                      "--out", str(tmp_path)])
    assert build_book.main() == 1
    assert ran == [Path(nb).name for nb in build_book.notebooks()]
    results = build_book.results_dir(tmp_path, "pretrained")
    assert not (results / "_status.json").exists()
    failed = json.loads((results / "_failed.json").read_text())
    assert [r["status"].startswith("failed in cell 4: ModelUnavailableError") for r in failed].count(True) \
        == 1
    stage = tmp_path / "stage"
    for page in ("intro.md", "status.md"):
        text = (stage / "book" / page).read_text()
        assert f"This build FAILED: 1 of {len(ran)} chapters" in text, page
        assert "ModelUnavailableError: no hub" in text, page
    assert jb and jb[0][1:3] == ["build", str(stage)]


def test_repository_url_is_one_setting():
    check_one_setting(ROOT)
    readme = (ROOT / "README.md").read_text()  # the headline figure by the site's fixed address
    assert f"({build_book.book_url()}{build_book.HEADLINE_FILE})" in readme
    assert build_book.book_url("https://github.com/Some-One/my-fork/") == "https://some-one.github.io/my-fork/"
    assert build_book.book_url("https://github.com/ana/ana.github.io") == "https://ana.github.io/"


def test_set_repo_url_rewrites_every_address(tmp_path):
    import set_repo_url

    for name in ("_config.yml", "_toc.yml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks")
    old = build_book.repo_settings()["url"]
    old_book = build_book.book_url()
    set_repo_url.main("https://github.com/someone/vitreg-fork", root=tmp_path)
    assert build_book.repo_settings(tmp_path)["url"] == "https://github.com/someone/vitreg-fork"
    check_one_setting(tmp_path)
    assert "https://someone.github.io/vitreg-fork/" in (tmp_path / "README.md").read_text()
    for f in [tmp_path / "README.md", *(tmp_path / "notebooks").glob("*.ipynb")]:
        text = f.read_text()
        assert old not in text and old_book not in text, f.name


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


def test_an_unknown_dataset_names_the_options():
    with pytest.raises(ValueError, match="nor a folder.*'auto'.*boxes.json"):
        settings("offline", smoke=True, dataset="imagenet")


def test_chapter2_numbers_are_what_the_library_measures(built):
    from vitreg_lib.models import training_log
    from vitreg_lib.train import summarize_log

    rec = json.loads((built / "results" / "offline" / "02_where_and_when.json").read_text())
    s = settings("offline", smoke=True)
    assert rec["emergence_fraction"]["value"] == summarize_log(training_log(s.log_model))["emerged_at"]
    assert rec["emergence_fraction"]["paper"] == pytest.approx(1 / 3, abs=1e-3)
    for name in s.sizes:
        split = rec[f"split_depth_{name}"]["value"]
        assert split is None or 0 <= split < 1
        assert 0 <= rec[f"max_outlier_pct_{name}"]["value"] <= 100


def test_chapters3_and_4_recorded_numbers(built):
    from vitreg_lib.paper import probe_reference

    s = settings("offline", smoke=True)
    ch3 = json.loads((built / "results" / "offline" / "03_redundant_patches.json").read_text())
    ch4 = json.loads((built / "results" / "offline" / "04_local_and_global.json").read_text())
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

    rec = json.loads((built / "results" / "offline" / "05_registers.json").read_text())
    s = settings("offline", smoke=True)
    imgs = data.analysis_images(s.n_photos, s.n_scenes, seed=0, scene=s.scene)
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
    rec = json.loads((built / "results" / "offline" / "06_test_time_registers.json").read_text())
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

    rec = json.loads((built / "results" / "offline" / "07_object_discovery.json").read_text())
    s = settings("offline", smoke=True)
    d = s.discovery
    assert {f"corloc_{m}" for m in d.models} | {f"corloc_{d.test_time}_ttr"} <= set(rec)
    assert s.scene == data.scene_kwargs(load_model(d.models[0]).info["data"])  # the minis' own scenes
    ds = data.boxed_images(d.dataset, d.n_images, seed=30_000, **s.scene)
    found = discovery.discover(load_model(d.pair[1]), ds.images, k=d.k)
    entry = rec[f"corloc_{d.pair[1]}"]
    assert entry["value"] == pytest.approx(discovery.corloc(found.boxes, ds.boxes))
    assert f"k = {d.k}" in entry["note"] and "scenes" in entry["note"]
    assert entry["comparable"].startswith("no") and entry["paper"] == 55.4  # DINOv2 + registers, F9
    html = (built / "_build" / "html" / "notebooks" / "07_object_discovery.html").read_text()
    assert len(re.findall(r"<img [^>]*src=\"[^\"]+\.png\"", html)) >= 3 and "Paper vs here" in html


def test_the_intro_note_follows_the_tier():
    assert "**offline** tier" in build_book.tier_note(["offline"])
    assert build_book.tier_note(["mini"]) == build_book.tier_note(["offline"])  # the old name, an alias
    note = build_book.tier_note(["pretrained"])
    assert "**pretrained** tier" in note and "scorecard" in note and "mini" not in note
    assert note.startswith("```{important}") and note.endswith("```")


# --------------------------------------------------------------------------- the explorers, in a real browser

EXPLORER_CHAPTERS = ["01_high_norm_tokens", "02_where_and_when", "05_registers", "06_test_time_registers"]


def open_explorer(browser, built, stem: str):
    """The built chapter page opened from disk, network blocked, its explorer drawn."""
    page = Page(browser, (built / "_build" / "html" / "notebooks" / f"{stem}.html").as_uri(), width=1280)
    page.ready()
    return page


def slide_to(page, position: int, layers: list[int]) -> None:
    page.move_slider_to(position, len(layers))
    page.page.wait_for_function("layer => Array.from(document.querySelectorAll("
                                "'.js-plotly-plot .annotation-text')).some(a => a.textContent"
                                ".includes('layer ' + layer))", arg=layers[position])


@pytest.mark.parametrize("stem", EXPLORER_CHAPTERS)
def test_each_built_explorer_slides_through_its_layers_offline(built, browser, stem):
    """The published page, as a reader without a kernel gets it: the slider redraws the maps
    with the layer's values, hover names a norm, nothing asks for the network, no widget box."""
    path = built / "_build" / "html" / "notebooks" / f"{stem}.html"
    html = path.read_text()
    assert path.stat().st_size <= 5_000_000, f"{stem}: {path.stat().st_size / 1e6:.1f} MB"
    assert "application/vnd.jupyter.widget-view+json" not in html  # no empty widget boxes (tqdm, ipywidgets)
    page = open_explorer(browser, built, stem)
    payload = page.payload()
    decoded = {m["name"]: explorer.decode(m) for m in payload["models"]}
    layers, grid = payload["models"][0]["layers"], payload["models"][0]["grid"]
    assert len(layers) >= 2, "the book's explorer must offer more than one block"

    def drawn_are(position: int) -> list[np.ndarray]:
        maps = []
        for t in page.traces("norm"):
            expect = decoded[t["name"]]["norms"][position, 0].reshape(grid)
            z = np.asarray(t["z"], dtype=float)
            assert np.allclose(z, expect, rtol=1e-6, atol=1e-6), (stem, t["name"], position)
            maps.append(expect)
        assert maps, stem
        return maps

    last = drawn_are(len(layers) - 1)  # the default view: the last block
    slide_to(page, 0, layers)
    first = drawn_are(0)
    assert any(not np.allclose(a, b) for a, b in zip(first, last)), f"{stem}: the maps did not change"
    text = page.hover_patch(page.trace_index("norm"), 0, 0)
    assert re.search(r"norm [\d.]+", text) and re.search(r"rank \d+ of \d+", text), text
    assert not page.own_errors(), page.errors
    assert not page.blocked, page.blocked


def test_chapter1_explorer_draws_what_the_library_computes(built, browser):
    """Chapter 1's explorer, slid to the first block, draws the library's patch norms of the
    chapter's models on the chapter's images (recomputed here), within the page's 8-bit step."""
    page = open_explorer(browser, built, "01_high_norm_tokens")
    payload = page.payload()
    layers = payload["models"][0]["layers"]
    s = settings("offline", smoke=True)
    imgs = data.analysis_images(s.n_photos, s.n_scenes, seed=0, photos=s.photos, scene=s.scene)
    shown = [im["name"] for im in payload["images"]]
    image = list(imgs.images).index(shown[0])
    slide_to(page, 0, layers)
    drawn = page.traces("norm")
    assert [t["name"] for t in drawn] == list(s.pairs[0])  # the pair without and with registers
    for t in drawn:
        f = features.extract(load_model(t["name"]), list(imgs.images.values()), layers="all")
        every = outliers.patch_norm_maps(f, layers[0])
        step = (every.max() - every.min()) / 255  # the page's step: one per model and layer, over every image
        assert np.abs(np.asarray(t["z"]) - every[image]).max() <= step / 2 * (1 + 1e-5) + 1e-6, t["name"]


def test_the_lab_page_sums_the_search_up_and_the_full_log_is_not_a_page(built):
    """The mini-lab's page is one a reader finishes: under 1,500 words of text, its figures,
    and no word of how the project is run; the full log (experiments/RESULTS.md) stays a
    repository file that the page links, not a page of the book."""
    from html import unescape

    html = built / "_build" / "html"
    page = (html / "book" / "lab.html").read_text()
    article = page[page.index('<article class="bd-article"'):page.index("</article>")]
    text = unescape(re.sub(r"<[^>]+>", " ", re.sub(r"<(script|style)\b.*?</\1>", " ", article, flags=re.S)))
    words = [w for w in text.split() if re.search(r"\w", w)]
    assert 600 < len(words) < 1500, len(words)
    assert not re.search(r"\b(issues?|sessions?|tickets?)\b", text, re.I), \
        re.search(r".{40}\b(issues?|sessions?|tickets?)\b.{40}", text, re.I | re.S)
    assert len(re.findall(r"<img [^>]*src=\"[^\"]+\.png\"", article)) >= 2
    assert f'href="{build_book.repo_file_url("experiments/RESULTS.md")}"' in article
    assert not (html / "experiments" / "RESULTS.html").exists()
    assert not [p.name for p in html.rglob("*.html") if "RESULTS.html" in p.read_text()]
    assert 'href="lab.html"' in (html / "book" / "intro.html").read_text()  # in the book's contents


def test_every_paper_vs_here_table_fits_the_text_column(built, browser):
    """Each chapter's "paper vs here" table (vitreg_lib.record.PaperTable), in a 1280-px
    window: no wider than its cell output and the article's text column, no cell whose text
    runs out of it, one missing marker, short numbers, and its notes under the table."""
    for nb in build_book.notebooks():
        path = built / "_build" / "html" / "notebooks" / f"{Path(nb).stem}.html"
        page = Page(browser, path.as_uri(), width=1280)
        found = page.page.evaluate("""() => Array.from(document.querySelectorAll('.vitreg-paper-table'))
            .map(t => { const table = t.querySelector('table'), out = t.closest('.cell_output');
              const article = t.closest('article');
              return {width: table.scrollWidth, output: out.clientWidth, article: article.clientWidth,
                      boxWidth: t.scrollWidth, box: t.clientWidth, text: table.innerText,
                      notes: t.querySelectorAll('ol > li').length,
                      overflowing: Array.from(table.querySelectorAll('td, th'))
                        .filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.textContent)}; })""")
        assert found, f"{nb}: no paper-vs-here table"
        for t in found:
            assert t["width"] <= t["output"] <= t["article"] and t["boxWidth"] <= t["box"], (nb, t)
            assert not t["overflowing"], (nb, t["overflowing"])
            assert not re.search(r"\bnan\b|\bNone\b|\d\.\d{4}", t["text"], re.I), (nb, t["text"])
            assert t["notes"] >= 1, nb  # every chapter's table has a note (its data / rule)
        assert not page.blocked, page.blocked
        page.page.close()


def test_each_chapter_opens_with_a_box_its_numbers_give(built):
    """Under each chapter's title, the box of tools/opening_box.py, from the numbers that
    chapter recorded in this build: its verdict line is the one the recorded numbers give."""
    import opening_box

    for nb in build_book.notebooks():
        stem = Path(nb).stem
        html = (built / "_build" / "html" / nb.replace(".ipynb", ".html")).read_text()
        recorded = json.loads((built / "results" / "offline" / f"{stem}.json").read_text())
        box = opening_box.box(stem, recorded, "offline")
        if box is None:
            assert opening_box.TITLE not in html, stem
            continue
        article = html[html.index("<article"):]
        assert article.index(opening_box.TITLE) < article.index("<h2"), stem  # at the top
        for verdict in re.findall(r"\*\*Here\*\* \(offline tier\): ([^—]+) —", box):
            assert f"<strong>Here</strong> (offline tier): {verdict.strip()} —" in html, (stem, verdict)
