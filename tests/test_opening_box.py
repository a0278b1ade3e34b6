"""The box each chapter opens with (tools/opening_box.py): three lines computed from the
chapter's recorded numbers, and the build puts it under the chapter's title."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402
import opening_box  # noqa: E402


def entry(value, paper, model="m", comparable="", note=""):
    return dict(value=value, paper=paper, model=model, comparable=comparable, note=note)


def test_a_reproduced_finding_says_so_and_gives_no_excuse():
    text = opening_box.box("01_high_norm_tokens", {"outlier_pct_m": entry(2.4, 2.37)}, "pretrained")
    assert "**The paper** (F1, DINOv2 ViT-g/14): high-norm outlier tokens exist; `outlier_pct` 2.37." in text
    assert "**Here** (pretrained tier): reproduced (1 of 1) — `outlier_pct` 2.4 on m." in text
    assert "they do not" in text


def test_the_reasons_are_the_chapters_own_words():
    entries = {"outlier_pct_m": entry(0.0, 2.37, comparable="no: paper is DINOv2 ViT-g, norm > 150"),
               "norm_ratio_m": entry(1.5, 10.0, comparable="loosely: same quantity, other model"),
               "no_paper_value": entry(3.0, None)}
    text = opening_box.box("01_high_norm_tokens", entries, "offline")
    assert "not reproduced (0 of 1)" in text  # the "no" one is not judged
    why = text.split("**Why they differ**: ")[1]
    assert why.startswith("no: paper is DINOv2 ViT-g, norm > 150; loosely: same quantity, other model (")
    assert "no_paper_value" not in text


def test_a_chapter_without_paper_values_gets_no_box():
    assert opening_box.box("02_where_and_when", {"x_m": entry(1.0, None)}, "offline") is None


def test_the_build_puts_the_box_under_the_title(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "id": "t", "metadata": {}, "source": ["# Title\n"]},
                    {"cell_type": "code", "id": "c", "metadata": {}, "source": [], "outputs": [],
                     "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    page = tmp_path / "01_high_norm_tokens.ipynb"
    page.write_text(json.dumps(nb))
    folder = build_book.results_dir(tmp_path, "offline")
    folder.mkdir(parents=True)
    (folder / "01_high_norm_tokens.json").write_text(json.dumps({"outlier_pct_m": entry(0.1, 2.37)}))
    run = dict(notebook="notebooks/01_high_norm_tokens.ipynb", status="ok", tier="offline")
    assert build_book.add_opening_box(page, tmp_path, run)
    cells = json.loads(page.read_text())["cells"]
    assert [c["id"] for c in cells] == ["t", "opening-box", "c"]
    assert "".join(cells[1]["source"]).startswith(":::{admonition} This chapter at a glance")
    assert not build_book.add_opening_box(page, tmp_path, dict(run, status="failed in cell 3"))
