"""The scorecard (tools/scorecard.py) built from a planted results folder: both tiers, a
string paper value, a missing measurement, a "no: ..." comparable, a tier whose build
stopped."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import scorecard  # noqa: E402
from scorecard import NOT_COMPARABLE, NOT_REPRODUCED, REPRODUCED  # noqa: E402

CHAPTERS = {"01_high_norm_tokens": "notebooks/01_high_norm_tokens",
            "04_local_and_global": "notebooks/04_local_and_global",
            "05_registers": "notebooks/05_registers"}


def entry(value, paper, model, comparable="", note=""):
    return dict(value=value, paper=paper, model=model, note=note, comparable=comparable)


def plant(root: Path, tier: str, notebooks: dict, status: bool = True, mode: str = "full") -> None:
    folder = root / tier
    folder.mkdir(parents=True)
    for nb, entries in notebooks.items():
        (folder / f"{nb}.json").write_text(json.dumps(entries))
    if status:
        runs = [dict(notebook=f"notebooks/{nb}.ipynb", status="ok", mode=mode, tier=tier) for nb in notebooks]
        (folder / scorecard.STATUS_FILE).write_text(json.dumps(runs))


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    plant(root, "mini", {
        "01_high_norm_tokens": {
            "outlier_pct_mini_reg0": entry(0.0, 2.37, "mini_reg0", "no: a 1 M-parameter model, no outliers",
                                           note="histogram gap rule | last block; 16 scenes, cost $0"),
            "norm_ratio_mini_reg0": entry(None, 10.0, "mini_reg0", note="no outliers: no ratio"),
            "cls_attention_on_outliers_mini_reg0": entry(1.2, None, "mini_reg0"),  # no paper value: no row
        },
        "04_local_and_global": {
            "position_top1_normal_mini_reg0": entry(40.0, 41.7, "mini_reg0"),
            "global_accuracy_cls_mini_reg0": entry(70.0, 86.0, "mini_reg0"),
        },
        "05_registers": {
            "extra_flops_pct_vitl_4": entry(1.6, "< 2", "ViT-L/14 (FLOPs counted)"),
            "extra_flops_pct_vitl_16": entry(7.6, "~ 6", "ViT-L/14 (FLOPs counted)"),
            "outlier_pct_mini_reg4": entry(0.25, "≈ 0 (the high-norm mode disappears)", "mini_reg4"),
        },
    }, mode="smoke")
    plant(root, "pretrained", {
        "01_high_norm_tokens": {
            "outlier_pct_dinov2_g": entry(2.5, 2.37, "dinov2_g", "yes"),
            "outlier_pct_dinov2_g_reg": entry(3.0, 2.37, "dinov2_g_reg", "partly: registers"),
        },
    })
    plant(root, "gpu_run", {"01_high_norm_tokens": {"outlier_pct_x": entry(2.37, 2.37, "x")}}, status=False)
    return root


def test_rows_are_the_numbers_with_a_paper_value_grouped_by_finding(results):
    rows = scorecard.rows(results, list(CHAPTERS))
    got = [(r.finding, r.quantity, r.tier, r.model, r.verdict) for r in rows]
    assert got == [
        ("F1", "outlier_pct", "mini", "mini_reg0", NOT_COMPARABLE),  # comparable: "no: ..."
        ("F1", "outlier_pct", "pretrained", "dinov2_g", REPRODUCED),  # the same quantity, side by side
        ("F1", "outlier_pct", "pretrained", "dinov2_g_reg", NOT_REPRODUCED),
        ("F1", "norm_ratio", "mini", "mini_reg0", NOT_COMPARABLE),  # nothing measured
        ("F4", "position_top1_normal", "mini", "mini_reg0", REPRODUCED),
        ("F5", "global_accuracy_cls", "mini", "mini_reg0", NOT_REPRODUCED),
        ("F6", "outlier_pct", "mini", "mini_reg4", REPRODUCED),  # "≈ 0": at most 0.5 from zero
        ("F8", "extra_flops_pct_vitl_4", "mini", "ViT-L/14 (FLOPs counted)", REPRODUCED),  # "< 2"
        ("F8", "extra_flops_pct_vitl_16", "mini", "ViT-L/14 (FLOPs counted)", NOT_REPRODUCED),  # "~ 6"
    ]
    assert all(r.tier != "gpu_run" for r in rows)  # no _status.json: that build did not finish
    first = rows[0]
    assert (first.name, first.paper, first.value, first.notebook) == \
        ("outlier_pct_mini_reg0", 2.37, 0.0, "01_high_norm_tokens")
    assert first.comparable.startswith("no:") and "histogram gap rule" in first.note


@pytest.mark.parametrize("paper, value, comparable, expected", [
    (2.0, 2.2, "", REPRODUCED),  # exactly 10 %
    (2.0, 2.21, "", NOT_REPRODUCED),
    (-5.0, -4.6, "", REPRODUCED),
    (41.7, 41.7, "No, different data", NOT_COMPARABLE),  # "no" in any case
    (41.7, 41.7, "not on ImageNet", NOT_COMPARABLE),  # starts with "no": the stated rule
    (41.7, float("nan"), "", NOT_COMPARABLE),
    (41.7, "n/a", "", NOT_COMPARABLE),
    ("< 2", 2.0, "", NOT_REPRODUCED),
    ("<= 2", 2.0, "", REPRODUCED),
    ("> 50", 55, "", REPRODUCED),
    ("~6", 4.7, "", NOT_REPRODUCED),
    ("≈ 6", 4.9, "", REPRODUCED),
    ("≈ 0", 0.6, "", NOT_REPRODUCED),
    ("0.375", 0.4, "", REPRODUCED),  # a number written as text
    ([200, 600], 650, "", NOT_REPRODUCED),
    ([600, 200], 300, "", REPRODUCED),
    ("layers <= 17, k ~ 45", 17, "", NOT_COMPARABLE),  # not a value: nothing to test against
    ({"normal": 41.7}, 41.7, "", NOT_COMPARABLE),
])
def test_verdict_rules(paper, value, comparable, expected):
    assert scorecard.verdict(paper, value, comparable)[0] == expected


def test_quantity_drops_the_model_name_only():
    assert scorecard.quantity("outlier_pct_mini_reg0_ttr", "mini_reg0+ttr") == "outlier_pct"
    assert scorecard.quantity("planted_neuron_ranked_first", "mini_reg0 + planted unit") == \
        "planted_neuron_ranked_first"
    assert scorecard.quantity("corloc_dinov2_s", None) == "corloc_dinov2_s"


def test_the_findings_are_the_paper_pages_headings_and_the_scorecard_reads_them_from_the_library():
    from vitreg_lib import paper

    headings = re.findall(r"^### ([FT]\d+): (.+)$", (ROOT / "book" / "paper.md").read_text(), re.M)
    assert dict(headings) == paper.FINDINGS and list(dict(headings)) == list(paper.FINDINGS)
    assert scorecard.FINDINGS is paper.FINDINGS and scorecard.verdict is paper.verdict
    assert set(paper.PAPER) - {"T1_code", "register_content"} <= set(paper.FINDINGS)


def test_every_chapter_maps_to_a_finding_and_chapter_4_splits_local_from_global():
    import build_book

    for nb in build_book.notebooks():
        assert scorecard.finding_of(Path(nb).stem, "any_name") in scorecard.FINDINGS, nb
    assert scorecard.finding_of("04_local_and_global", "pixels_l2_outlier_dinov2_g") == "F4"
    assert scorecard.finding_of("04_local_and_global", "global_accuracy_outlier_patch_dinov2_g") == "F5"
    assert scorecard.finding_of("05_registers", "extra_flops_pct_mini_reg4") == "F8"
    with pytest.raises(KeyError, match="FINDING_OF"):
        scorecard.finding_of("08_new_chapter", "x")


def table_rows(md: str) -> list[list[str]]:
    """Cells of every table body row, split on unescaped pipes as a Markdown parser does."""
    out = []
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| quantity"):
            out.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return out


def test_page_states_the_rules_and_shows_both_tiers(results):
    md = scorecard.page(results, CHAPTERS)
    assert "within 10 % (relative)" in md and "within 20 %" in md and "at most 0.5 from zero" in md
    assert "**mini** (smoke mode, 3 chapters): 3 reproduced, 2 not reproduced, 2 not comparable." in md
    assert "**pretrained** (full mode, 1 chapter): 1 reproduced, 1 not reproduced, 0 not comparable." in md
    assert "gpu\\_run: its build did not finish" in md
    headings = re.findall(r"^## (F\d+|T\d+): ", md, re.M)
    assert headings == ["F1", "F4", "F5", "F6", "F8"]
    missing = "F2, F3, F7, F9, F10, F11, T1, T2, T3, T4"
    assert re.search(rf"^No recorded number with a paper value for: {missing}\.$", md, re.M)
    cells = table_rows(md)
    assert len(cells) == 9 and all(len(c) == len(scorecard.COLUMNS) for c in cells)  # "|" in a note escaped
    quantity, tier, model, paper, here, verdict, chapter, texts = cells[0]
    assert (quantity, tier, model, paper, here, verdict) == \
        ("outlier\\_pct", "mini", "mini\\_reg0", "2.37", "0", "**not comparable** (marked no)")
    assert texts == "1"  # the note is written once, under the table
    assert ("\n1. *comparable:* no: a 1 M-parameter model, no outliers; "
            "*data / rule:* histogram gap rule \\| last block; 16 scenes, cost \\$0\n") in md
    assert chapter == "{doc}`chapter 1 </notebooks/01_high_norm_tokens>`"
    assert cells[3][4] == "—" and cells[3][5] == "**not comparable** (not measured)"
    f1_notes = md.split("## F1")[1].split("## F4")[0]
    assert f"\n{cells[3][7]}. *data / rule:* no outliers: no ratio\n" in f1_notes  # no comparable: no label
    flops = [c for c in cells if c[0].replace("\u200b", "").replace("\\", "") == "extra_flops_pct_vitl_4"][0]
    assert flops[0] == "extra\\_\u200bflops\\_\u200bpct\\_\u200bvitl\\_\u200b4"  # a long name may wrap
    assert flops[3] == "\\< 2" and flops[5] == "**reproduced** (\\< 2)" and flops[7] == ""


def test_page_parses_as_the_table_it_claims(results):
    """Through the Markdown parser the book uses, with dollar math on as in _config.yml:
    five tables of eight columns, nine body rows, the note's '$' and '|' kept as text."""
    from markdown_it import MarkdownIt
    from mdit_py_plugins.dollarmath import dollarmath_plugin

    md = scorecard.page(results, CHAPTERS)
    parser = MarkdownIt("commonmark").enable("table").use(dollarmath_plugin)
    tokens = parser.parse(md)
    widths, cells = [], 0
    for t in tokens:
        if t.type == "tr_open":
            cells = 0
        elif t.type in ("td_open", "th_open"):
            cells += 1
        elif t.type == "tr_close":
            widths.append(cells)
    assert widths == [len(scorecard.COLUMNS)] * (5 + 9)  # a header row per finding, a row per number
    assert not [c for t in tokens for c in (t.children or []) if "math" in c.type]
    html = parser.render(md)
    assert "<em>data / rule:</em> histogram gap rule | last block; 16 scenes, cost $0</li>" in html


def test_page_without_results_says_so(tmp_path):
    md = scorecard.page(tmp_path / "nothing")
    assert "No tier was built" in md and "| quantity" not in md
