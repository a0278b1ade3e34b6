"""The scorecard page: first a summary, one row per finding (:func:`summary`: its verdict
in each tier, its chapter), then every recorded number that has a paper value, beside the
paper's, with a verdict computed from explicit criteria.

``tools/build_book.py`` calls :func:`page` in its stage step with ``OUT/results``, which
holds one folder per tier (``OUT/results/<tier>/<notebook>.json``, written by
:class:`vitreg_lib.record.Recorder`). A tier is on the page only if its folder has the
``_status.json`` that a build writes after every chapter executed; a folder without it
(a build that stopped) is named on the page and skipped.

The findings (:data:`vitreg_lib.paper.FINDINGS`), the rule that gives each row its
verdict (:func:`vitreg_lib.paper.verdict`: reproduced, not reproduced or not comparable;
an *arithmetic check* for a counted quantity such as the extra FLOPs of registers, which
is never a reproduction) and the rule that sums a finding's rows up in one tier
(:func:`vitreg_lib.paper.finding_verdict`) are the library's; this page lays them out,
and :func:`criteria` writes the rules on the page from the same constants. Each finding's
chapters are read from the "*Chapter:*" line under its heading on the paper page
(book/paper.md, :func:`finding_chapters`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from vitreg_lib.paper import (
    AGREES,
    APPROX_REL_TOL,
    APPROX_ZERO_ABS,
    ARITHMETIC,
    ARITHMETIC_QUANTITIES,
    DIFFERS,
    FINDINGS,
    NOT_COMPARABLE,
    NOT_COMPARED,
    NOT_REPRODUCED,
    PARTLY,
    REL_TOL,
    REPRODUCED,
    finding_verdict,
    format_number,
    is_arithmetic,
    verdict,
)

ROOT = Path(__file__).resolve().parents[1]
PAPER_PAGE = ROOT / "book" / "paper.md"  # the findings' headings and their "*Chapter:*" lines
STATUS_FILE = "_status.json"
TIER_ORDER = ("offline", "pretrained")  # other tiers follow, alphabetically; all of these are columns
TIER_LABELS: dict[str, str] = {}  # a summary column's heading, where not the tier's name
#: a summary cell with no verdict: the tier was not built, its build did not finish, or
#: it did not run the chapter(s) that record the finding's numbers (FINDING_OF)
NOT_BUILT, UNFINISHED, NOT_RUN = "not built", "build unfinished", "chapter not run"

#: which finding a recorded number belongs to: (notebook, record-name prefix, finding);
#: the first row whose notebook matches and whose prefix starts the name wins.
FINDING_OF = (
    ("01_high_norm_tokens", "", "F1"),
    ("02_where_and_when", "", "F2"),
    ("03_redundant_patches", "", "F3"),
    ("04_local_and_global", "global_", "F5"),  # single-token global probe
    ("04_local_and_global", "", "F4"),  # position and pixel probes
    ("05_registers", "extra_flops_", "F8"),
    ("05_registers", "", "F6"),
    ("06_test_time_registers", "", "T1"),
    ("07_object_discovery", "", "F9"),
)

#: the table's columns: short ones first, the two long texts share the last, so that the
#: table fits the book's text column (nine columns did not: every cell wrapped word by word)
COLUMNS = ("quantity", "tier", "model", "paper", "here", "verdict", "chapter", "note")
#: the summary's columns: the finding, then one per tier (:func:`summary_tiers`), then its chapter
SUMMARY_FIRST, SUMMARY_LAST = "finding", "chapter"



@dataclass(frozen=True)
class Row:
    finding: str
    quantity: str  # the record name without its model suffix
    name: str  # the record name
    tier: str
    notebook: str
    model: str | None
    paper: object
    value: object
    comparable: str
    note: str
    verdict: str
    criterion: str  # the test that gave the verdict, in a few words


def finding_of(notebook: str, name: str) -> str:
    for nb, prefix, finding in FINDING_OF:
        if nb == notebook and name.startswith(prefix):
            return finding
    raise KeyError(f"No finding for {notebook}/{name}: add the notebook to FINDING_OF in {__file__}.")


def quantity(name: str, model: str | None) -> str:
    """The record name less a trailing model name (``outlier_pct_mini_reg0`` -> ``outlier_pct``),
    so that one quantity measured on several models and tiers lines up."""
    if model:
        suffix = "_" + re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[:-len(suffix)]
    return name


def _tier_key(tier: str) -> tuple:
    return (TIER_ORDER.index(tier), "") if tier in TIER_ORDER else (len(TIER_ORDER), tier)


def tiers(results_root: Path) -> tuple[dict[str, list[dict]], list[str]]:
    """``({tier: its build's runs (from _status.json)}, [tiers skipped: no _status.json])``."""
    root = Path(results_root)
    folders = [d for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    folders.sort(key=lambda d: _tier_key(d.name))
    built = {d.name: json.loads((d / STATUS_FILE).read_text())
             for d in folders if (d / STATUS_FILE).is_file()}
    return built, [d.name for d in folders if d.name not in built]


def rows(results_root: Path, order: list[str] | None = None) -> list[Row]:
    """One row per recorded number that has a paper value, for every built tier, sorted by
    finding, then quantity (chapter order, then record order), then tier. ``order``: the
    notebooks' names in chapter order (default: alphabetical)."""
    built, _ = tiers(results_root)
    out = []
    for tier in built:
        for path in sorted(Path(results_root, tier).glob("*.json")):
            if path.name.startswith("_"):
                continue
            for name, e in json.loads(path.read_text()).items():
                if e.get("paper") is None:
                    continue
                comparable = e.get("comparable") or ""
                v, criterion = verdict(e["paper"], e.get("value"), comparable, arithmetic=is_arithmetic(name))
                out.append(Row(finding_of(path.stem, name), quantity(name, e.get("model")), name, tier,
                               path.stem, e.get("model"), e["paper"], e.get("value"), comparable,
                               e.get("note") or "", v, criterion))
    findings = list(FINDINGS)
    notebooks = order or sorted({r.notebook for r in out})
    first = {}  # quantity -> its first appearance (chapter, record order)
    for i, r in enumerate(out):
        chapter = notebooks.index(r.notebook) if r.notebook in notebooks else len(notebooks)
        first.setdefault((r.finding, r.quantity), (chapter, i))
    return sorted(out, key=lambda r: (findings.index(r.finding) if r.finding in findings else len(findings),
                                      first[(r.finding, r.quantity)], _tier_key(r.tier)))


def _cell(x) -> str:
    """Text safe inside a MyST table cell: Markdown punctuation escaped, no line breaks."""
    text = " ".join(str(x).split())
    return re.sub(r"([\\`*_\[\]<>|$~{}#])", r"\\\1", text)


def _breakable(x) -> str:
    """:func:`_cell` with a zero-width space after each '_' of a long word, so that a long
    record or model name may wrap there (a table too wide for the page wraps every cell
    word by word)."""
    return re.sub(r"\S{15,}", lambda m: m.group().replace("\\_", "\\_\u200b"), _cell(x))


def _show(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return format_number(x)
    if isinstance(x, (list, tuple)):
        return " to ".join(map(_show, x))
    return str(x)


def criteria() -> str:
    """The verdict rules as the page states them, from the same constants the code uses."""
    counted = ", ".join(f"*{_cell(q)}*" for q in ARITHMETIC_QUANTITIES)
    return "\n".join([
        "*Paper* is the paper's value, *here* the value measured in this build. "
        "A number's **verdict** is decided by these rules, in this order:",
        "",
        f"1. **{NOT_COMPARABLE}**: the chapter marks the number as not comparable (its *comparable* "
        "entry starts with \"no\"), nothing was measured, or the paper's value is neither a number, "
        "a range nor a comparison.",
        f"2. **{REPRODUCED}**: the measured value is within {REL_TOL * 100:g} % (relative) of an exact "
        f"paper value; within {APPROX_REL_TOL * 100:g} % of an approximate one (\"\\~ x\", \"≈ x\"), where "
        f"\"≈ 0\" means at most {APPROX_ZERO_ABS:g} from zero in the quantity's own unit; inside a "
        "paper range; or on the right side of a paper bound (\"< x\", \"> x\", \"<= x\", \">= x\").",
        f"3. **{NOT_REPRODUCED}**: every other number.",
        "",
        f"A counted quantity ({counted}: the extra FLOPs of registers, counted on the architecture) "
        f"follows from arithmetic, not from what a model learned. Its verdict is **{ARITHMETIC}**, and "
        f"the same rules say whether it *{AGREES}* or *{DIFFERS}*. It never counts as a reproduction.",
        "",
        "Each verdict is followed by the test that number was given, in brackets. A finding's verdict in "
        f"a tier (the summary) counts its numbers judged by rules 2 and 3: **{REPRODUCED}** (k of n) when "
        f"all n reproduce, **{PARTLY}** when some do, **{NOT_REPRODUCED}** when none do. Where none was "
        f"judged, it is **{ARITHMETIC}** (how many agree) if it has counted numbers, **{NOT_COMPARABLE}** if "
        f"it has other numbers, and *{NOT_COMPARED}* if this tier recorded no number beside a paper value "
        "for it.",
    ])


def finding_chapters(paper_page: Path = PAPER_PAGE) -> dict[str, list[str]]:
    """``{finding: [document, ...]}``: the documents that the "*Chapter:*" line under each
    finding's heading on the paper page links (``notebooks/05_registers``,
    ``experiments/RESULTS``), in its order; ``[]`` for a planned chapter."""
    out, finding = {}, None
    for line in Path(paper_page).read_text().splitlines():
        heading = re.match(r"^#{1,6} ([FT]\d+): ", line)
        if heading:
            finding = heading.group(1)
            out[finding], reading = [], False
        elif line.startswith("#"):
            finding = None
        if finding is None:
            continue
        if line.startswith("*Chapter:*"):
            reading = True
        elif not line.strip():
            reading = False
        if reading:
            out[finding] += [t.lstrip("/") for t in re.findall(r"\{doc\}`(?:[^`<]*<)?([^`<>]+)>?`", line)]
    return out


def summary_findings(chapters_of: dict[str, list[str]] | None = None) -> list[str]:
    """The findings the summary scores, in :data:`FINDINGS` order: the paper's own (F*) and
    every follow-up with a chapter notebook of its own (T1); the others (the mini-lab page,
    planned chapters) are named under the table."""
    chapters_of = finding_chapters() if chapters_of is None else chapters_of
    return [f for f in FINDINGS
            if f.startswith("F") or any(d.startswith("notebooks/") for d in chapters_of.get(f, []))]


def summary_tiers(results_root: Path) -> list[str]:
    """The summary's tier columns: :data:`TIER_ORDER` always (a tier not built, or whose
    build did not finish, says so), then any other built tier, alphabetically."""
    return sorted(set(TIER_ORDER) | set(tiers(results_root)[0]), key=_tier_key)


def _chapter_links(docs: list[str]) -> str:
    if not docs:
        return "planned"
    links = []  # the column is headed "chapter": a notebook's number is its label
    for doc in docs:
        stem = Path(doc).name
        number = stem.split("_")[0].lstrip("0")
        links.append(f"{{doc}}`{number if number.isdigit() else stem} </{doc}>`")
    return ", ".join(links)


def _verdict_cell(text: str) -> str:
    if text in (NOT_COMPARED, NOT_BUILT, UNFINISHED, NOT_RUN):
        return f"*{text}*"
    word, _, count = text.partition(" (")
    return f"**{word}**" + (f" ({count}" if count else "")


def summary(results_root: Path, chapters_of: dict[str, list[str]] | None = None) -> str:
    """The summary table: one row per scored finding (:func:`summary_findings`), its
    verdict in each tier (:func:`vitreg_lib.paper.finding_verdict` over its numbers'
    verdicts; *not built*, *build unfinished*, or *chapter not run* where the tier ran none
    of the notebooks that record the finding's numbers), and a link to its chapter; a
    legend under it."""
    chapters_of = finding_chapters() if chapters_of is None else chapters_of
    built, skipped = tiers(results_root)
    found = rows(results_root)
    columns = summary_tiers(results_root)
    scored = summary_findings(chapters_of)
    head = [SUMMARY_FIRST] + [TIER_LABELS.get(t, t) for t in columns] + [SUMMARY_LAST]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for finding in scored:
        cells = [f"**{finding}** {_cell(FINDINGS[finding])}"]
        recording = {nb for nb, _, f in FINDING_OF if f == finding}  # its numbers' notebooks
        for tier in columns:
            ran = {Path(r.get("notebook", "")).stem for r in built.get(tier, [])}
            if tier in built and recording and not recording & ran:
                text = NOT_RUN
            elif tier in built:
                text = finding_verdict((r.verdict, r.criterion) for r in found
                                       if r.finding == finding and r.tier == tier)
            else:
                text = UNFINISHED if tier in skipped else NOT_BUILT
            cells.append(_verdict_cell(text))
        cells.append(_chapter_links(chapters_of.get(finding, [])))
        lines.append("| " + " | ".join(cells) + " |")
    others = [f for f in FINDINGS if f not in scored]
    lines += ["", f"*k of n*: of the n numbers judged against the paper's, k reproduced. **{ARITHMETIC}**: "
              f"counted FLOPs, checked against the paper's, never a reproduction. *{NOT_COMPARED}*: no "
              "number of this tier stands beside a paper value (a qualitative finding, a planned chapter, "
              f"or a number the paper does not give). *{NOT_RUN}*: this tier's build did not run the "
              "chapter. The rules are below."]
    if others:
        lines[-1] += (f" Not scored: {', '.join(others)}, follow-ups without a chapter of their own "
                      "({doc}`the paper in brief </book/paper>`).")
    return "\n".join(lines)


def page(results_root: Path, chapters: dict[str, str] | None = None,
         chapters_of: dict[str, list[str]] | None = None) -> str:
    """The scorecard's Markdown (MyST) for every built tier under ``results_root``: the
    summary (:func:`summary`), the tiers, the rules, then one table per finding with a
    row per number. ``chapters``: notebook name -> document path in the book
    (``notebooks/01_...``), in chapter order; a notebook not in it is named without a
    link. ``chapters_of``: the findings' chapters (default: read from the paper page)."""
    chapters = chapters or {}
    built, skipped = tiers(results_root)
    found = rows(results_root, list(chapters))
    lines = ["## Summary", "", summary(results_root, chapters_of), "", "## Tiers on this page", ""]
    if not built:
        lines.append("No tier was built: no numbers were recorded.")
    verdicts = (REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE, ARITHMETIC)
    for tier, runs in built.items():
        modes = ", ".join(sorted({r.get("mode", "?") for r in runs}))
        counts = {v: sum(r.verdict == v for r in found if r.tier == tier) for v in verdicts}
        chapters_run = f"{len(runs)} chapter" + ("s" if len(runs) != 1 else "")
        lines.append(f"- **{tier}** ({modes} mode, {chapters_run}): "
                     + ", ".join(f"{n} {v}" + ("s" if v == ARITHMETIC and n != 1 else "")
                                 for v, n in counts.items()) + ".")
    for tier in skipped:
        lines.append(f"- {_cell(tier)}: its build did not finish (no {_cell(STATUS_FILE)}), "
                     "so it is left out.")
    lines += ["", "## How a verdict is decided", "", criteria()]
    for finding in dict.fromkeys(r.finding for r in found):
        title = f"## {finding}: {FINDINGS.get(finding, '')}".rstrip(": ")
        lines += ["", title, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        notes: dict[str, int] = {}  # a note's text -> its number under this finding's table
        for r in (r for r in found if r.finding == finding):
            doc = chapters.get(r.notebook)
            number = r.notebook.split("_")[0].lstrip("0") or r.notebook
            link = f"{{doc}}`chapter {number} </{doc}>`" if doc else _cell(r.notebook)
            texts = [f"*comparable:* {_breakable(r.comparable)}" if r.comparable else "",
                     f"*data / rule:* {_breakable(r.note)}" if r.note else ""]
            text = "; ".join(filter(None, texts))
            number = str(notes.setdefault(text, len(notes) + 1)) if text else ""
            cells = [_breakable(r.quantity), r.tier, _breakable(r.model or ""), _cell(_show(r.paper)),
                     _cell(_show(r.value)), f"**{r.verdict}** ({_cell(r.criterion)})", link, number]
            lines.append("| " + " | ".join(cells) + " |")
        if notes:  # the long texts under the table, once each, so the rows stay one line high
            lines += ["", "Notes:", ""] + [f"{n}. {text}" for text, n in notes.items()]
    return "\n".join(lines) + "\n"
