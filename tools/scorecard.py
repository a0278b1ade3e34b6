"""The scorecard page: every recorded number that has a paper value, beside the paper's,
with a verdict computed from explicit criteria.

``tools/build_book.py`` calls :func:`page` in its stage step with ``OUT/results``, which
holds one folder per tier (``OUT/results/<tier>/<notebook>.json``, written by
:class:`vitreg_lib.record.Recorder`). A tier is on the page only if its folder has the
``_status.json`` that a build writes after every chapter executed; a folder without it
(a build that stopped) is named on the page and skipped.

The findings (:data:`vitreg_lib.paper.FINDINGS`) and the rule that gives each row its
verdict (:func:`vitreg_lib.paper.verdict`: reproduced, not reproduced or not comparable)
are the library's; this page lays them out, and :func:`criteria` writes the rule on the
page from the same constants.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from vitreg_lib.paper import (
    APPROX_REL_TOL,
    APPROX_ZERO_ABS,
    FINDINGS,
    NOT_COMPARABLE,
    NOT_REPRODUCED,
    REL_TOL,
    REPRODUCED,
    format_number,
    verdict,
)

STATUS_FILE = "_status.json"
TIER_ORDER = ("mini", "pretrained")  # other tiers follow, alphabetically

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
                v, criterion = verdict(e["paper"], e.get("value"), comparable)
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
    return "\n".join([
        "*Paper* is the paper's value, *here* the value measured in this build. "
        "A row's **verdict** is decided by these rules, in this order:",
        "",
        f"1. **{NOT_COMPARABLE}**: the chapter marks the number as not comparable (its *comparable* "
        "entry starts with \"no\"), nothing was measured, or the paper's value is neither a number, "
        "a range nor a comparison.",
        f"2. **{REPRODUCED}**: the measured value is within {REL_TOL * 100:g} % (relative) of an exact "
        f"paper value; within {APPROX_REL_TOL * 100:g} % of an approximate one (\"\\~ x\", \"≈ x\"), where "
        f"\"≈ 0\" means at most {APPROX_ZERO_ABS:g} from zero in the quantity's own unit; inside a "
        "paper range; or on the right side of a paper bound (\"< x\", \"> x\", \"<= x\", \">= x\").",
        f"3. **{NOT_REPRODUCED}**: every other row.",
        "",
        "Each verdict is followed by the test that row was given, in brackets.",
    ])


def page(results_root: Path, chapters: dict[str, str] | None = None) -> str:
    """The scorecard's Markdown (MyST) for every built tier under ``results_root``.
    ``chapters``: notebook name -> document path in the book (``notebooks/01_...``), in
    chapter order; a notebook not in it is named without a link."""
    chapters = chapters or {}
    built, skipped = tiers(results_root)
    found = rows(results_root, list(chapters))
    lines = [criteria(), "", "## Tiers on this page", ""]
    if not built:
        lines.append("No tier was built: no numbers were recorded.")
    for tier, runs in built.items():
        modes = ", ".join(sorted({r.get("mode", "?") for r in runs}))
        counts = {v: sum(r.verdict == v for r in found if r.tier == tier)
                  for v in (REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE)}
        chapters_run = f"{len(runs)} chapter" + ("s" if len(runs) != 1 else "")
        lines.append(f"- **{tier}** ({modes} mode, {chapters_run}): "
                     + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".")
    for tier in skipped:
        lines.append(f"- {_cell(tier)}: its build did not finish (no {_cell(STATUS_FILE)}), "
                     "so it is left out.")
    missing = [f for f in FINDINGS if f not in {r.finding for r in found}]
    if missing:
        lines += ["", f"No recorded number with a paper value for: {', '.join(missing)}."]
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
