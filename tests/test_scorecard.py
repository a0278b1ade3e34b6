"""The scorecard (tools/scorecard.py) built from a planted results folder: both tiers, a
string paper value, a missing measurement, a "no: ..." comparable, a tier whose build
stopped, counted FLOPs (arithmetic checks, never reproductions); the summary's one row
per finding."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import scorecard  # noqa: E402
from scorecard import ARITHMETIC, NOT_COMPARABLE, NOT_REPRODUCED, REPRODUCED  # noqa: E402

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
    plant(root, "offline", {
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
        ("F1", "outlier_pct", "offline", "mini_reg0", NOT_COMPARABLE),  # comparable: "no: ..."
        ("F1", "outlier_pct", "pretrained", "dinov2_g", REPRODUCED),  # the same quantity, side by side
        ("F1", "outlier_pct", "pretrained", "dinov2_g_reg", NOT_REPRODUCED),
        ("F1", "norm_ratio", "offline", "mini_reg0", NOT_COMPARABLE),  # nothing measured
        ("F4", "position_top1_normal", "offline", "mini_reg0", REPRODUCED),
        ("F5", "global_accuracy_cls", "offline", "mini_reg0", NOT_REPRODUCED),
        ("F6", "outlier_pct", "offline", "mini_reg4", REPRODUCED),  # "≈ 0": at most 0.5 from zero
        ("F8", "extra_flops_pct_vitl_4", "offline", "ViT-L/14 (FLOPs counted)", ARITHMETIC),  # "< 2"
        ("F8", "extra_flops_pct_vitl_16", "offline", "ViT-L/14 (FLOPs counted)", ARITHMETIC),  # "~ 6"
    ]
    assert [r.criterion for r in rows if r.finding == "F8"] == ["agrees, < 2", "differs, within 20 % of 6"]
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


@pytest.mark.parametrize("paper, value, comparable, criterion", [
    ("< 2", 1.6, "yes", "agrees, < 2"),
    ("~ 6", 7.6, "", "differs, within 20 % of 6"),
    ("< 2", 1.6, "no: 64 patches", "not comparable, marked no"),
    ("< 2", None, "", "not comparable, not measured"),
])
def test_a_counted_quantity_is_an_arithmetic_check_never_a_reproduction(paper, value, comparable, criterion):
    from vitreg_lib import paper as p

    assert p.is_arithmetic("extra_flops_pct_vitl_4") and p.is_arithmetic("extra_flops_pct_mini_reg4")
    assert not p.is_arithmetic("outlier_pct_mini_reg4")
    assert p.verdict(paper, value, comparable, arithmetic=True) == (ARITHMETIC, criterion)


@pytest.mark.parametrize("verdicts, expected", [
    ([(REPRODUCED, ""), (REPRODUCED, ""), (NOT_COMPARABLE, "marked no")], "reproduced (2 of 2)"),
    ([(REPRODUCED, ""), (NOT_REPRODUCED, ""), (NOT_REPRODUCED, "")], "partly reproduced (1 of 3)"),
    ([(NOT_REPRODUCED, ""), (ARITHMETIC, "agrees, < 2")], "not reproduced (0 of 1)"),  # FLOPs don't count
    ([(ARITHMETIC, "agrees, < 2"), (ARITHMETIC, "differs, ~ 6"), (ARITHMETIC, "not comparable, marked no")],
     "arithmetic check (1 of 2 agree)"),
    ([(ARITHMETIC, "agrees, < 2"), (NOT_COMPARABLE, "marked no")], "arithmetic check (1 of 1 agree)"),
    ([(NOT_COMPARABLE, "marked no"), (ARITHMETIC, "not comparable, marked no")], NOT_COMPARABLE),
    ([], "not compared"),
])
def test_a_findings_verdict_counts_its_judged_numbers(verdicts, expected):
    from vitreg_lib import paper

    assert paper.finding_verdict(verdicts) == expected


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


def cells_of(line: str) -> list[str]:
    """A table row's cells, split on unescaped pipes as a Markdown parser does."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def table_rows(md: str, header: str = "| quantity") -> list[list[str]]:
    """Cells of the body rows of every table whose header row starts with ``header`` (by
    default the per-number tables; ``"| finding"``: the summary)."""
    out, inside = [], False
    for line in md.splitlines():
        if not line.startswith("|"):
            inside = False
        elif line.startswith("| ") and not inside:
            inside = line.startswith(header)
        elif inside and not line.startswith("|-"):
            out.append(cells_of(line))
    return out


def test_page_states_the_rules_and_shows_both_tiers(results):
    md = scorecard.page(results, CHAPTERS)
    assert "within 10 % (relative)" in md and "within 20 %" in md and "at most 0.5 from zero" in md
    assert "counted on the architecture" in md and "never counts as a reproduction" in md
    # the counted FLOPs are arithmetic checks, not among the offline tier's reproductions
    assert ("**offline** (smoke mode, 3 chapters): 2 reproduced, 1 not reproduced, 2 not comparable, "
            "2 arithmetic checks.") in md
    assert ("**pretrained** (full mode, 1 chapter): 1 reproduced, 1 not reproduced, 0 not comparable, "
            "0 arithmetic checks.") in md
    assert "gpu\\_run: its build did not finish" in md
    assert md.index("## Summary") < md.index("## Tiers on this page") < md.index("## How a verdict")
    headings = re.findall(r"^## (F\d+|T\d+): ", md, re.M)
    assert headings == ["F1", "F4", "F5", "F6", "F8"]
    cells = table_rows(md)
    assert len(cells) == 9 and all(len(c) == len(scorecard.COLUMNS) for c in cells)  # "|" in a note escaped
    quantity, tier, model, paper, here, verdict, chapter, texts = cells[0]
    assert (quantity, tier, model, paper, here, verdict) == \
        ("outlier\\_pct", "offline", "mini\\_reg0", "2.37", "0", "**not comparable** (marked no)")
    assert texts == "1"  # the note is written once, under the table
    assert ("\n1. *comparable:* no: a 1 M-parameter model, no outliers; "
            "*data / rule:* histogram gap rule \\| last block; 16 scenes, cost \\$0\n") in md
    assert chapter == "{doc}`chapter 1 </notebooks/01_high_norm_tokens>`"
    assert cells[3][4] == "—" and cells[3][5] == "**not comparable** (not measured)"
    f1_notes = md.split("## F1")[1].split("## F4")[0]
    assert f"\n{cells[3][7]}. *data / rule:* no outliers: no ratio\n" in f1_notes  # no comparable: no label
    flops = [c for c in cells if c[0].replace("\u200b", "").replace("\\", "") == "extra_flops_pct_vitl_4"][0]
    assert flops[0] == "extra\\_\u200bflops\\_\u200bpct\\_\u200bvitl\\_\u200b4"  # a long name may wrap
    assert flops[3] == "\\< 2" and flops[5] == "**arithmetic check** (agrees, \\< 2)" and flops[7] == ""


def test_page_parses_as_the_table_it_claims(results):
    """Through the Markdown parser the book uses, with dollar math on as in _config.yml:
    the summary (a header and a row per scored finding, one column per tier between the
    finding and its chapter), then five tables of eight columns, nine body rows, the
    note's '$' and '|' kept as text."""
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
    scored = len(scorecard.summary_findings())
    assert widths[:1 + scored] == [2 + len(scorecard.TIER_ORDER)] * (1 + scored)  # no gpu_run: unfinished
    assert widths[1 + scored:] == [len(scorecard.COLUMNS)] * (5 + 9)  # a header per finding, a row per number
    assert not [c for t in tokens for c in (t.children or []) if "math" in c.type]
    html = parser.render(md)
    assert "<em>data / rule:</em> histogram gap rule | last block; 16 scenes, cost $0</li>" in html


def test_page_without_results_says_so(tmp_path):
    md = scorecard.page(tmp_path / "nothing")
    assert "No tier was built" in md and "| quantity" not in md
    summary = table_rows(md, "| finding")
    assert len(summary) == len(scorecard.summary_findings())
    assert all(row[1:3] == ["*not built*", "*not built*"] for row in summary)


def test_the_summary_has_one_row_per_finding_with_each_tiers_verdict_first_on_the_page(results):
    """F1-F11 and T1 (the follow-up with a chapter of its own), in the paper page's order;
    each tier's cell is the library's finding_verdict over that tier's rows; counted FLOPs
    are an arithmetic check; a chapter the tier did not run says so; a link per row."""
    from vitreg_lib import paper

    md = scorecard.page(results, CHAPTERS)
    assert md.startswith("## Summary\n\n| finding | offline | pretrained | chapter |\n")
    summary = table_rows(md, "| finding")
    scored = [f"F{i}" for i in range(1, 12)] + ["T1"]
    assert scorecard.summary_findings() == scored
    assert [re.match(r"\*\*(\w+)\*\* ", row[0]).group(1) for row in summary] == scored
    by_finding = dict(zip(scored, summary))
    assert by_finding["F1"][1:3] == ["**not comparable**", "**partly reproduced** (1 of 2)"]
    assert by_finding["F4"][1:3] == ["**reproduced** (1 of 1)", "*chapter not run*"]
    assert by_finding["F5"][1] == "**not reproduced** (0 of 1)"
    assert by_finding["F8"][1] == "**arithmetic check** (1 of 2 agree)"  # never "reproduced"
    assert by_finding["F2"][1] == "*chapter not run*"  # the offline build ran chapters 1, 4 and 5
    assert by_finding["F7"][1:] == ["*not compared*", "*not compared*", "planned"]
    assert by_finding["F10"][1] == "*not compared*"  # chapter 5 ran, with no number for it
    rows = scorecard.rows(results, list(CHAPTERS))
    for finding, row in by_finding.items():
        for tier, cell in zip(scorecard.TIER_ORDER, row[1:3]):
            mine = [(r.verdict, r.criterion) for r in rows if r.finding == finding and r.tier == tier]
            if mine:  # computed by the library from the recorded numbers, never typed
                assert cell.replace("*", "") == paper.finding_verdict(mine), (finding, tier)
    assert by_finding["F1"][3] == "{doc}`1 </notebooks/01_high_norm_tokens>`"
    assert by_finding["F11"][3] == ("{doc}`5 </notebooks/05_registers>`, "
                                    "{doc}`6 </notebooks/06_test_time_registers>`")
    assert "Not scored: T2, T3, T4" in md
    assert max(len(re.sub(r"\{doc\}`([^<`]*)<[^`]*>`", r"\1", c)) for row in summary for c in row) <= 50


def test_each_findings_chapters_are_the_paper_pages_and_hold_its_recorded_numbers():
    chapters_of = scorecard.finding_chapters()
    assert list(chapters_of) == list(scorecard.FINDINGS)
    assert chapters_of["F7"] == [] and chapters_of["T3"] == []  # planned
    assert chapters_of["F11"] == ["notebooks/05_registers", "notebooks/06_test_time_registers"]
    assert chapters_of["T2"] and not chapters_of["T2"][0].startswith("notebooks/")  # the mini-lab page
    for notebook, _, finding in scorecard.FINDING_OF:  # a number's chapter is its finding's chapter
        assert f"notebooks/{notebook}" in chapters_of[finding], (notebook, finding)
