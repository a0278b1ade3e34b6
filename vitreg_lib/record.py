"""Record the numbers a notebook measures, beside the paper's.

``rec = Recorder("01_high_norm_tokens")`` then ``rec("outlier_pct_mini_reg0", 1.3,
paper=2.37, model="mini_reg0", note="...")``:

* the value is glued into the notebook in myst-nb's glue format (so the prose can
  cite it with ``{glue:text}`name``` in the built book) and shown as a line of text;
* it is written to ``<results_dir>/<notebook>.json`` (name -> value, paper value,
  model, note), so tests and a scorecard page can read every measured number.

``results_dir`` defaults to ``$VITREG_RESULTS_DIR``, else ``_build/results`` under the
repository root (the nearest folder above the working directory holding
``_config.yml``), else under the working directory.

The paper's numbers live in :data:`vitreg_lib.paper.PAPER`, never typed in a notebook.

``rec.table()`` (a chapter's "paper vs here" table) returns a :class:`PaperTable`: it
shows in the book, Jupyter and Colab as an HTML table that fits the book's text column
(fixed layout, long names wrap at ``_``), with numbers to three significant digits (ints
stay ints), one marker (:data:`MISSING`) for nothing measured or no paper value, the
"comparable" verdict as one word (yes / partly / no ...) and every longer text (the
note, the rest of the verdict, a value too long for its cell) in a numbered list of
notes under the table, so that it prints too. The raw numbers stay a DataFrame:
``rec.frame()`` or ``rec.table().frame`` (``rec.table()["quantity"]`` reads it too).
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

GLUE_PREFIX = "application/papermill.record/"  # myst-nb's prefix for glued, hidden values


def default_results_dir() -> Path:
    env = os.environ.get("VITREG_RESULTS_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "_config.yml").is_file():
            return folder / "_build" / "results"
    return here / "_build" / "results"


def glue(name: str, value: Any) -> None:
    """Emit ``value`` under ``name`` in myst-nb's glue format (hidden display)."""
    from IPython.core.formatters import format_display_data
    from IPython.display import display

    bundle, metadata = format_display_data(value)
    metadata["scrapbook"] = dict(name=name, mime_prefix=GLUE_PREFIX)
    display({GLUE_PREFIX + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Recorder:
    """Records a notebook's measured numbers (see the module docstring)."""

    def __init__(self, notebook: str, results_dir: str | Path | None = None, show: bool = True):
        self.notebook = notebook
        self.path = Path(results_dir or default_results_dir()) / f"{notebook}.json"
        self.show = show
        self.entries: dict[str, dict] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("{}")

    def __call__(self, name: str, value: Any, *, paper: Any = None, model: str | None = None,
                 note: str = "", comparable: str = "", show: bool | None = None) -> Any:
        """Record ``value`` under ``name`` (see the module docstring); ``show=False`` records
        and glues it without printing its line (for a cell that shows its numbers in a
        table of its own; default: the recorder's ``show``)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"Record names use letters, digits and '_': {name!r}.")
        value = _plain(value)
        self.entries[name] = dict(value=value, paper=_plain(paper), model=model, note=note,
                                  comparable=comparable)
        self.path.write_text(json.dumps(self.entries, indent=1))
        try:
            glue(name, value)
        except ImportError:  # no IPython: plain script
            pass
        if self.show if show is None else show:
            shown = f"{value:.4g}" if isinstance(value, float) else value
            extra = f" (paper: {paper})" if paper is not None else ""
            print(f"{name} = {shown}{extra}" + (f" — {model}" if model else ""))
        return value

    def figure(self, fig: Any, name: str, caption: str) -> Path:
        """Save ``fig`` as ``_<name>.png`` beside the recorded numbers, with its caption in
        ``_<name>.json`` (the book build publishes the headline figure from there)."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"Figure names use letters, digits and '_': {name!r}.")
        png = self.path.parent / f"_{name}.png"  # "_": not a notebook's numbers
        fig.savefig(png, dpi=100)
        (self.path.parent / f"_{name}.json").write_text(json.dumps(dict(caption=caption,
                                                                       notebook=self.notebook)))
        return png

    def frame(self, names: list[str] | None = None) -> pd.DataFrame:
        """The recorded numbers that carry a paper value (or those in ``names``), raw: one
        row each, columns quantity, paper, here, model, comparable, note."""
        rows = [dict(quantity=k, paper=v["paper"], here=v["value"], model=v["model"],
                     comparable=v["comparable"], note=v["note"])
                for k, v in self._chosen(names).items()]
        return pd.DataFrame(rows, columns=list(PaperTable.RAW_COLUMNS))

    def table(self, names: list[str] | None = None) -> PaperTable:
        """The "paper vs here" table of the recorded numbers that carry a paper value (or
        those in ``names``), laid out for the book (see :class:`PaperTable`)."""
        return PaperTable(self._chosen(names))

    def _chosen(self, names: list[str] | None) -> dict[str, dict]:
        return {k: v for k, v in self.entries.items()
                if (names is None and v["paper"] is not None) or (names and k in names)}


MISSING = "—"  # the one marker for a number that is not there (None, NaN, no paper value)
SHORT = 16  # characters a paper or here cell shows; a longer text goes to the notes
VERDICT_WORDS = ("yes", "partly", "loosely", "roughly", "no")  # a "comparable" text's first word


def format_value(x: Any) -> str:
    """A number as a table cell: floats to three significant digits (no exponent from 1000
    to a million), ints as they are, None / NaN / inf as :data:`MISSING`, a list or dict
    as its items (a two-number list is a range, "a to b")."""
    x = _plain(x)
    if x is None:
        return MISSING
    if isinstance(x, float):
        if 1000 <= abs(x) < 1e6:
            return f"{round(x, 2 - math.floor(math.log10(abs(x)))):.0f}"
        return f"{x:.3g}"
    if isinstance(x, dict):
        return ", ".join(f"{k}: {format_value(v)}" for k, v in x.items())
    if isinstance(x, (list, tuple)):
        if len(x) == 2 and all(isinstance(_plain(v), (int, float)) for v in x):
            return " to ".join(map(format_value, x))
        return "[" + ", ".join(map(format_value, x)) + "]"
    return str(x)


def short_cell(x: Any) -> tuple[str, str]:
    """``(cell, full)``: the formatted value, shortened to about :data:`SHORT` characters
    (a list or dict to its count of values, a text to its part before " (", ";" or ","), and
    the full text when it was shortened (else "")."""
    full = format_value(x)
    if len(full) <= SHORT:
        return full, ""
    if isinstance(x, (dict, list, tuple)):
        return f"{len(x)} values", full
    head = re.split(r" \(|[;,]", full)[0].strip()
    if not head or len(head) > SHORT:
        head = full[:SHORT - 1].rstrip() + "…"
    return head, full


def verdict_word(comparable: str) -> tuple[str, str]:
    """``("yes" | "partly" | "no" | ..., rest)`` from a "comparable" text such as "no: the
    paper's is ViT-g": its first word when it is one of :data:`VERDICT_WORDS`, else
    "partly" (a text that qualifies the comparison); ``rest`` is what the word leaves."""
    text = (comparable or "").strip()
    if not text:
        return MISSING, ""
    first = re.match(r"(\w+)\s*[:;,.\-—–]?\s*(.*)", text, re.S)
    if first and first.group(1).lower() in VERDICT_WORDS:
        return first.group(1).lower(), first.group(2).strip()
    return "partly", text


class PaperTable:
    """A chapter's "paper vs here" table as the book shows it (see the module docstring).

    ``frame`` is the raw DataFrame; ``rows`` the shown cells (strings) and ``notes`` the
    numbered notes under the table. Renders as HTML (``_repr_html_``: inline styles only,
    so it looks the same in the book, Jupyter and Colab), Markdown and plain text."""

    RAW_COLUMNS = ("quantity", "paper", "here", "model", "comparable", "note")
    COLUMNS = RAW_COLUMNS  # shown in the same order; "note" holds a note's number
    WIDTHS = (30, 13, 12, 22, 16, 7)  # % of the column: fixed, so that the table fits
    NUMERIC = ("paper", "here")

    def __init__(self, entries: dict[str, dict]):
        self.frame = pd.DataFrame(
            [dict(quantity=k, paper=v["paper"], here=v["value"], model=v["model"],
                  comparable=v["comparable"], note=v["note"]) for k, v in entries.items()],
            columns=list(self.RAW_COLUMNS))
        self.notes: list[str] = []
        self.rows = [self._row(k, v) for k, v in entries.items()]

    def _row(self, name: str, entry: dict) -> dict[str, str]:
        paper, paper_full = short_cell(entry["paper"])
        here, here_full = short_cell(entry["value"])
        word, rest = verdict_word(entry.get("comparable", ""))
        texts = [f"paper: {paper_full}" if paper_full else "", f"here: {here_full}" if here_full else "",
                 f"comparable: {rest}" if rest else "", (entry.get("note") or "").strip()]
        text = "; ".join(t for t in texts if t)
        if text and text not in self.notes:
            self.notes.append(text)
        number = str(self.notes.index(text) + 1) if text else ""
        return dict(quantity=name, paper=paper, here=here, model=entry.get("model") or MISSING,
                    comparable=word, note=number)

    # pandas-like reading of the raw numbers: table["quantity"], len(table)
    def __getitem__(self, key: Any) -> Any:
        return self.frame[key]

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> pd.Index:
        return self.frame.columns

    def _repr_html_(self) -> str:
        if not self.rows:
            return "<p><em>No recorded number has a paper value.</em></p>"
        cell = "padding:0.25em 0.45em;vertical-align:top;white-space:normal;overflow-wrap:anywhere;"

        def td(col: str, text: str, tag: str = "td") -> str:
            align = "right" if col in self.NUMERIC or col == "note" else "left"
            nums = "font-variant-numeric:tabular-nums;" if col in self.NUMERIC else ""
            return f'<{tag} style="{cell}text-align:{align};{nums}">{_breakable(text)}</{tag}>'

        cols = "".join(f'<col style="width:{w}%">' for w in self.WIDTHS)
        head = "".join(td(c, c, "th") for c in self.COLUMNS)
        body = "".join("<tr>" + "".join(td(c, r[c]) for c in self.COLUMNS) + "</tr>" for r in self.rows)
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in self.notes)
        notes = (f'<p style="margin:0.5em 0 0.1em 0">Notes:</p><ol style="margin:0;padding-left:1.8em">'
                 f"{notes}</ol>") if notes else ""
        return (f'<div class="vitreg-paper-table" style="max-width:100%;font-size:0.85em;'
                f'overflow-wrap:anywhere">'
                f'<table class="dataframe" style="table-layout:fixed;width:100%;max-width:100%;'
                f'border-collapse:collapse;margin:0">'
                f"<colgroup>{cols}</colgroup><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"{notes}</div>")

    def _repr_markdown_(self) -> str:
        if not self.rows:
            return "*No recorded number has a paper value.*"

        def md(text: str) -> str:
            return re.sub(r"([\\`*_|<>\[\]])", r"\\\1", text)

        lines = ["| " + " | ".join(self.COLUMNS) + " |", "|" + "---|" * len(self.COLUMNS)]
        lines += ["| " + " | ".join(md(r[c]) for c in self.COLUMNS) + " |" for r in self.rows]
        if self.notes:
            lines += ["", "Notes:", ""] + [f"{i}. {md(n)}" for i, n in enumerate(self.notes, 1)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        if not self.rows:
            return "No recorded number has a paper value."
        text = pd.DataFrame(self.rows, columns=list(self.COLUMNS)).to_string(index=False)
        if self.notes:
            text += "\n\nNotes:\n" + "\n".join(f"{i}. {n}" for i, n in enumerate(self.notes, 1))
        return text


def _breakable(text: str) -> str:
    """``text`` escaped for HTML, with a break opportunity after each "_" (long record and
    model names wrap there rather than anywhere)."""
    return html.escape(text).replace("_", "_<wbr>")


def load_results(path: str | Path) -> dict[str, dict]:
    """Read a results JSON written by :class:`Recorder`."""
    return json.loads(Path(path).read_text())
